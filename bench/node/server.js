// The bench's reference backend: the todo backend of the "DevOps with Kubernetes" course, written the
// way the course writes it. Express + Sequelize on PostgreSQL; each create is published to core NATS
// (no JetStream, fire and forget) after the row is written. One process, no per-request logging.
//
// env: PORT, DATABASE_URL (postgres:// or postgresql://), NATS_URL; HOST (default: all interfaces)
const express = require('express')
const { Sequelize, DataTypes } = require('sequelize')
const { connect } = require('nats')

const PORT = process.env.PORT || 3000
const HOST = process.env.HOST
const DATABASE_URL = process.env.DATABASE_URL
const NATS_URL = process.env.NATS_URL || 'nats://127.0.0.1:4222'

const sequelize = new Sequelize(DATABASE_URL, {
  logging: false,
  pool: { max: 10 },
})

// its own table: the Python API's `todos` lives in the same database
const Todo = sequelize.define('Todo', {
  id: { type: DataTypes.UUID, defaultValue: DataTypes.UUIDV4, primaryKey: true },
  task: { type: DataTypes.STRING(140), allowNull: false },
  done: { type: DataTypes.BOOLEAN, defaultValue: false },
}, { tableName: 'node_todos' })

const app = express()
app.use(express.json())

let nc

app.get('/healthz', (req, res) => {
  res.sendStatus(200)
})

app.get('/api/todos', async (req, res) => {
  const todos = await Todo.findAll()
  res.json(todos)
})

app.post('/api/todos', async (req, res) => {
  const { task } = req.body || {}
  if (typeof task !== 'string' || task.length < 1 || task.length > 140) {
    return res.status(400).json({ error: 'task must be 1 to 140 characters' })
  }
  const todo = await Todo.create({ task })
  nc.publish('todos.created', JSON.stringify(todo))
  res.status(201).json(todo)
})

const start = async () => {
  await sequelize.authenticate()
  await Todo.sync()
  nc = await connect({ servers: NATS_URL })
  app.listen(PORT, HOST, (error) => {
    if (error) throw error
    console.log(`todo backend listening on ${PORT}`)
  })
}

start().catch((error) => {
  console.error(error)
  process.exit(1)
})
