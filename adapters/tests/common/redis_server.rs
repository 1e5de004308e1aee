//! A private redis-server a test can SIGKILL and restart (owned by the Redis adapter work).
