"""Reading versions onto local disk: the cache, its pins and file locks, and fetching a version into it."""
