-- heaper_push_batch (0024) again, with the heap row locked as late as it can be: every
-- statement that does not need the change time runs before the clock tick, so two group
-- commits on one heap (two in flight from one process, or one from each of two workers)
-- overlap everything but the tick, the block rows' UPDATE, the heap name and the NOTIFYs,
-- and COMMIT (issue 12: the heap row lock, held from the function's start to COMMIT, made
-- them take turns over the whole function).
--
-- The heap rows are read FOR KEY SHARE at the start (their owner and root block; a heap
-- deletion, FOR UPDATE, waits for us), and locked FOR NO KEY UPDATE by the clock tick. The
-- tick stays under that lock until COMMIT, so change times are still commit-ordered within
-- a heap: a reader that sees a change time sees every earlier one (documents.py). Lock order
-- is advisory keys, heap rows (key share), block rows, heap rows (sorted, then ticked). No
-- deadlock comes of it: every other writer of a block row takes that block's advisory lock
-- first (held here), and a heap deletion (the heap FOR UPDATE, no advisory locks) waits for
-- the key share before it touches a block; the only foreign keys to blocks are from a
-- block's own rows.
--
-- Same rows, same decisions, same announcements as 0024: only the statements' order changed
-- (the log rows, search lines, relations and files first; their values never depended on
-- the change time).
CREATE OR REPLACE FUNCTION heaper_push_batch(
    p_now bigint, p_lock int4, p_keys int4[], p_origin text,
    p_ids text[], p_heaps text[], p_expected bigint[], p_owners text[],
    p_types text[], p_titles text[], p_texts text[],
    p_relations text[], p_files text[], p_apps text[],
    p_deleted bigint[], p_perm bigint[], p_svs bytea[], p_sizes bigint[],
    p_authors text[], p_nupd int4[], p_upd bytea[], p_inline text[],
    p_rel_i int4[], p_rel_kind text[], p_rel_target text[],
    p_file_i int4[], p_file_hash text[]
) RETURNS TABLE (ok boolean, updated_at bigint, last_seq bigint, sync_version int4)
LANGUAGE plpgsql AS $$
DECLARE
    n int := cardinality(p_ids);
    h_ids text[]; h_owner text[]; h_root text[];
    b_ids text[]; b_heap text[]; b_seq bigint[]; b_ver int4[]; b_trash boolean[];
    b_parts bigint[]; b_title text[]; b_text text[];
    hi int; bi int; i int; c int; base bigint; at int := 0;
    acc int[] := '{}';  -- the changes stored, in order
    row_of int[] := '{}';  -- each change's index into the b_ arrays
    off int[] := '{}';  -- each change's first update in p_upd, minus one
    times bigint[] := '{}';
    oks boolean[] := '{}';
    heaps_used text[] := '{}';
    kind text;
    payload text;
    g_id text[]; g_body text[]; g_k int4[]; c_id text[]; c_body text[]; c_k int4[];
    acc_ids text[];
BEGIN
    PERFORM count(pg_advisory_xact_lock(p_lock, k)) FROM unnest(p_keys) AS k;
    SELECT array_agg(s.id), array_agg(s.owner_id), array_agg(s.root_block_id)
    INTO h_ids, h_owner, h_root
    FROM (SELECT h.id, h.owner_id, h.root_block_id FROM heaps h WHERE h.id = ANY(p_heaps)
          ORDER BY h.id COLLATE "C" FOR KEY SHARE) s;
    SELECT array_agg(s.id), array_agg(s.heap_id), array_agg(s.last_seq),
           array_agg(s.sync_version), array_agg(s.trashed), array_agg(s.text_parts),
           array_agg(s.title), array_agg(s.text)
    INTO b_ids, b_heap, b_seq, b_ver, b_trash, b_parts, b_title, b_text
    FROM (SELECT b.id, b.heap_id, b.last_seq, b.sync_version,
                 b.deleted_at IS NOT NULL AS trashed, b.text_parts, b.title, b.text
          FROM blocks b WHERE b.id = ANY(p_ids) ORDER BY b.id COLLATE "C" FOR UPDATE) s;
    FOR i IN 1 .. n LOOP
        off := off || at;
        at := at + p_nupd[i];
        hi := array_position(h_ids, p_heaps[i]);
        bi := array_position(b_ids, p_ids[i]);
        row_of := row_of || bi;
        IF bi IS NOT NULL AND b_parts[bi] <> 0 THEN
            RAISE EXCEPTION 'a text kept in pieces' USING ERRCODE = 'HTB01';
        END IF;
        IF hi IS NULL  -- no such heap (rules.not_owner, and commit_all's heap check)
           OR (p_owners[i] IS NOT NULL AND h_owner[hi] IS DISTINCT FROM p_owners[i])
           OR bi IS NULL  -- rules.commit_conflict for an edit
           OR b_seq[bi] <> p_expected[i] OR b_heap[bi] <> p_heaps[i] THEN
            oks := oks || false;
        ELSE
            oks := oks || true;
            acc := acc || i;
        END IF;
    END LOOP;
    IF cardinality(acc) > 0 THEN
        INSERT INTO block_updates (block_id, seq, data, created_at, author_id)
        SELECT p_ids[j], p_expected[j] + u, p_upd[off[j] + u], p_now, p_authors[j]
        FROM unnest(acc) AS j, generate_series(1, p_nupd[j]) AS u ORDER BY j, u;
        -- Search lines: what left and what came (storage/search_lines.py), counted for
        -- every block in one statement, then written in one as search.py's _MOVED writes
        -- them: every row looked up by (block_id, key), so dead line rows are not scanned.
        WITH o AS (
            SELECT j, l.body, count(*) AS k FROM unnest(acc) AS j,
                regexp_split_to_table(b_title[row_of[j]] || E'\n' || b_text[row_of[j]], E'\n')
                AS l(body)
            WHERE l.body <> '' GROUP BY j, l.body
        ), nw AS (
            SELECT j, l.body, count(*) AS k FROM unnest(acc) AS j,
                regexp_split_to_table(p_titles[j] || E'\n' || p_texts[j], E'\n') AS l(body)
            WHERE l.body <> '' GROUP BY j, l.body
        ), d AS (
            SELECT p_ids[coalesce(nw.j, o.j)] AS id, coalesce(nw.body, o.body) AS body,
                   (coalesce(nw.k, 0) - coalesce(o.k, 0))::int AS delta
            FROM o FULL JOIN nw ON o.j = nw.j AND o.body = nw.body
            WHERE coalesce(nw.k, 0) <> coalesce(o.k, 0)
        )
        SELECT coalesce(array_agg(d.id) FILTER (WHERE d.delta < 0), '{}'),
               coalesce(array_agg(d.body) FILTER (WHERE d.delta < 0), '{}'),
               coalesce(array_agg(-d.delta) FILTER (WHERE d.delta < 0), '{}'),
               coalesce(array_agg(d.id) FILTER (WHERE d.delta > 0), '{}'),
               coalesce(array_agg(d.body) FILTER (WHERE d.delta > 0), '{}'),
               coalesce(array_agg(d.delta) FILTER (WHERE d.delta > 0), '{}')
        INTO g_id, g_body, g_k, c_id, c_body, c_k FROM d;
        IF cardinality(g_body) > 0 OR cardinality(c_body) > 0 THEN
            WITH g(id, body, k) AS (SELECT * FROM unnest(g_id, g_body, g_k)),
            c(id, body, k) AS (SELECT * FROM unnest(c_id, c_body, c_k)),
            gd AS (DELETE FROM block_lines l USING g WHERE l.block_id = g.id
                AND l.key = heaper_line_key(g.body) AND l.body = g.body AND l.uses <= g.k),
            gu AS (UPDATE block_lines l SET uses = l.uses - g.k FROM g WHERE l.block_id = g.id
                AND l.key = heaper_line_key(g.body) AND l.body = g.body AND l.uses > g.k),
            u AS (UPDATE block_lines l SET uses = l.uses + c.k FROM c WHERE l.block_id = c.id
                AND l.key = heaper_line_key(c.body) AND l.body = c.body
                RETURNING l.block_id, l.body)
            INSERT INTO block_lines (block_id, body, uses)
            SELECT c.id, c.body, c.k FROM c
            WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.block_id = c.id AND u.body = c.body);
        END IF;
        SELECT array_agg(p_ids[j]) INTO acc_ids FROM unnest(acc) AS j;
        DELETE FROM block_relations WHERE block_id = ANY(acc_ids);
        INSERT INTO block_relations (block_id, kind, target_id, heap_id)
        SELECT p_ids[x.i], x.kind, x.target, p_heaps[x.i]
        FROM unnest(p_rel_i, p_rel_kind, p_rel_target) AS x(i, kind, target)
        WHERE oks[x.i] ON CONFLICT DO NOTHING;
        DELETE FROM block_files WHERE block_id = ANY(acc_ids);
        INSERT INTO block_files (block_id, hash, heap_id)
        SELECT p_ids[x.i], x.hash, p_heaps[x.i]
        FROM unnest(p_file_i, p_file_hash) AS x(i, hash)
        WHERE oks[x.i] ON CONFLICT DO NOTHING;
        -- The change times, under the heap row lock held until COMMIT: from here on. The
        -- heaps are locked first in one order (id, "C"), as 0024 did at the start: ticked in
        -- the changes' order, two batches holding the same two heaps in opposite orders
        -- (two in flight, or two workers) would deadlock.
        PERFORM 1 FROM heaps WHERE id IN (SELECT p_heaps[j] FROM unnest(acc) AS j)
        ORDER BY id COLLATE "C" FOR NO KEY UPDATE;
        times := array_fill(NULL::bigint, ARRAY[n]);
        FOR i IN SELECT unnest(acc) LOOP
            IF NOT p_heaps[i] = ANY(heaps_used) THEN
                heaps_used := heaps_used || p_heaps[i];
                SELECT count(*) INTO c FROM unnest(acc) AS j WHERE p_heaps[j] = p_heaps[i];
                UPDATE heaps SET clock = GREATEST(p_now + c - 1, clock + c) WHERE id = p_heaps[i]
                RETURNING clock - c INTO base;
                FOR bi IN SELECT unnest(acc) LOOP  -- the heap's changes, in order
                    IF p_heaps[bi] = p_heaps[i] THEN
                        base := base + 1;
                        times[bi] := base;
                    END IF;
                END LOOP;
            END IF;
        END LOOP;
        UPDATE blocks b SET type = p_types[j], title = p_titles[j], text = p_texts[j],
            relations = p_relations[j]::jsonb, files = p_files[j]::jsonb,
            apps = p_apps[j]::jsonb, updated_at = times[j], deleted_at = p_deleted[j],
            permanently_deleted_at = p_perm[j], state_vector = p_svs[j], size = p_sizes[j],
            last_seq = p_expected[j] + p_nupd[j], text_parts = 0
        FROM unnest(acc) AS j WHERE b.id = p_ids[j];
        UPDATE heaps h SET name = p_titles[j] FROM unnest(acc) AS j
        WHERE h.id = p_heaps[j] AND h.root_block_id = p_ids[j];
        IF p_origin IS NOT NULL THEN  -- delivered at COMMIT (storage/postgres/notify.py)
            FOR i IN SELECT unnest(acc) LOOP
                bi := row_of[i];
                IF p_inline[i] IS NOT NULL THEN
                    payload := json_build_object(
                        'o', p_origin, 'b', p_ids[i], 's', p_expected[i] + p_nupd[i],
                        'v', b_ver[bi], 'd', p_inline[i]::json)::text;
                    IF octet_length(payload) < 8000 THEN  -- else the pointer alone (below)
                        PERFORM pg_notify('heaper_live', payload);
                    END IF;
                END IF;
                kind := CASE
                    WHEN p_deleted[i] IS NOT NULL AND NOT b_trash[bi] THEN 'deleted'
                    WHEN p_deleted[i] IS NULL AND b_trash[bi] THEN 'restored'
                    ELSE 'changed' END;
                PERFORM pg_notify('heaper_live', json_build_object(
                    'o', p_origin, 'k', kind, 'h', p_heaps[i], 'b', p_ids[i],
                    's', p_expected[i] + p_nupd[i], 'v', b_ver[bi], 't', times[i])::text);
            END LOOP;
        END IF;
    END IF;
    RETURN QUERY SELECT oks[g], times[g], CASE WHEN oks[g] THEN p_expected[g] + p_nupd[g] END,
        CASE WHEN oks[g] THEN b_ver[row_of[g]] END
    FROM generate_series(1, n) AS g ORDER BY g;
END
$$;
