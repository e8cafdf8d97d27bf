"""The only modules that import a service driver (asyncpg, redis, clickhouse_connect), and the one
place each private seam of a dependency is touched, behind a version check (:mod:`._seams`)."""
