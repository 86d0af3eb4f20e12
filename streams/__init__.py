"""The contract between the API and the notifiers: subjects, payload, JetStream topology, CLI."""
