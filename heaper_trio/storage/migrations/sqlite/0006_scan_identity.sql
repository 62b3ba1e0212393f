-- The identity of the bytes a scan hashed, besides size and mtime_ns: device, inode and
-- change time (ns). A scanned file is served only if the file opened (no symbolic link
-- followed) is still that one; rows from before this migration have none, so their files are
-- treated as changed (hashed again by the next scan, or by the rescan a request queues).
-- Device and inode are unsigned 64-bit numbers stored as signed ones.
ALTER TABLE scan_entries ADD COLUMN dev INTEGER;
ALTER TABLE scan_entries ADD COLUMN ino INTEGER;
ALTER TABLE scan_entries ADD COLUMN ctime_ns INTEGER;
-- Serving checks a file's path in every heap that scanned it.
CREATE INDEX scan_entries_path ON scan_entries (path);
