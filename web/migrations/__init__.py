"""Schema migrations, written by `tortoise makemigrations` (tortoise-orm's built-in migrations)."""
