//! A private nats-server a test can SIGKILL and restart (owned by the JetStream adapter work).
