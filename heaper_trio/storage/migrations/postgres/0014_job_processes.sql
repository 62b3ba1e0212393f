-- The server processes on this database and the scan roots each one has (issue 14): a scan
-- root is a folder of one machine, so a process asked for a folder outside its own roots
-- queues the job only if another live process has a root around it. Each process writes its
-- row with its job heartbeat (Unix ms); rows of processes long gone are deleted by the others.
CREATE TABLE job_processes (
    id           TEXT PRIMARY KEY,          -- the process id of its jobs (random per start)
    host         TEXT NOT NULL DEFAULT '',
    pid          INTEGER NOT NULL DEFAULT 0,
    scan_roots   TEXT NOT NULL DEFAULT '[]', -- JSON list of absolute paths
    heartbeat_at BIGINT NOT NULL
);
