"""PostgreSQL: URIs, which database or server, one Database object per URI, connections, errors, the schema."""
