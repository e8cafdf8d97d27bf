"""The queries of :mod:`.recycle`: what a released database's counts, sequences and shared state are."""

from __future__ import annotations

__all__ = ["SEQUENCES_SQL", "SHARED_SQL", "STATS_SQL", "XACT_SQL"]

# Read by the database's own login role (the session handed to the next test): the row counts,
# maintenance counts and sequences of everything in the database but the shared catalogs.
STATS_SQL = """
SELECT oid, relkind::text, system, ins, upd, del, maintenance, value FROM (
  SELECT c.oid, c.relkind, c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
         AS system, pg_stat_get_tuples_inserted(c.oid) AS ins, pg_stat_get_tuples_updated(c.oid) AS upd,
         pg_stat_get_tuples_deleted(c.oid) AS del, pg_stat_get_vacuum_count(c.oid)
         + pg_stat_get_autovacuum_count(c.oid) + pg_stat_get_analyze_count(c.oid)
         + pg_stat_get_autoanalyze_count(c.oid) AS maintenance,
         CASE WHEN c.relkind = 'S' THEN pg_sequence_last_value(c.oid) END AS value
  FROM pg_class c WHERE NOT c.relisshared AND c.relkind IN ('r', 't', 'm', 'p', 'S')
) s WHERE relkind = 'S' OR ins + upd + del + maintenance > 0
"""
XACT_SQL = """
SELECT s.relid, s.n_tup_ins, s.n_tup_upd, s.n_tup_del FROM pg_stat_xact_all_tables s
JOIN pg_class c ON c.oid = s.relid WHERE NOT c.relisshared AND s.n_tup_ins + s.n_tup_upd + s.n_tup_del > 0
"""
SEQUENCES_SQL = "SELECT oid, pg_sequence_last_value(oid) AS value FROM pg_class WHERE relkind = 'S'"
# The shared state of a database: its sessions but the caller's, settings of it or its role and
# prepared transactions (any: not recyclable), and what may only be compared with what it was when
# the database was made (its role's password, its and the test role's settings, the server's start,
# the statistics' last reset; a role without CREATEROLE can change nothing else of itself).
SHARED_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()) AS sessions,
       (SELECT count(*) FROM pg_prepared_xacts WHERE database = $1)
     + (SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
        WHERE d.datname = $1) AS settings,
       (SELECT coalesce(a.rolpassword, '') FROM pg_authid a WHERE a.rolname = $2) AS password,
       (SELECT coalesce(string_agg(s.setrole || ':' || s.setdatabase || ':' || s.setconfig::text, ' '
        ORDER BY s.setrole, s.setdatabase), '') FROM pg_db_role_setting s
        WHERE s.setrole IN ((SELECT oid FROM pg_roles WHERE rolname = $2), $3::regrole)) AS role_settings,
       pg_postmaster_start_time()::text AS started,
       coalesce((SELECT stats_reset::text FROM pg_stat_database WHERE datname = $1), '') AS reset,
       (SELECT oid FROM pg_database WHERE datname = $4) AS template
"""
