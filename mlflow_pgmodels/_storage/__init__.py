"""Bytes in the database: ``models.model_binary``, blobs of pieces, artifact rows, zips."""
