-- Full-text search that splits words the way SQLite's FTS5 (unicode61) does.
-- The 'simple' parser of to_tsvector / to_tsquery has its own idea of a word: it kept
-- 'word-12e2e901' and its part '12e2e901' as lexemes while the query '12e2e901' parsed as
-- '12e2' <-> 'e901' (a float), so such words were never found; and in a C-locale database it
-- neither lower-cased nor split non-ASCII text. Here a word is a run of letters and digits (ICU,
-- independent of the database locale), lower-cased, with combining diacritics removed
-- (café = cafe, as in unicode61), and the lexemes are built directly, with no parser. The query
-- side (storage/block_query.py) normalises its words the same way and casts to tsquery.
-- Needs a server built with ICU (the "und-x-icu" collation; PostgreSQL packages and images have it).
CREATE FUNCTION heaper_search_vector(doc text) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(string_agg('''' || w || ''':' || least(n, 16383), ' ' ORDER BY n), '')::tsvector
    FROM unnest(regexp_split_to_array(
        normalize(regexp_replace(
            normalize(lower(doc COLLATE "und-x-icu"), NFD), '[\u0300-\u036f]', '', 'g'
        ), NFC) COLLATE "und-x-icu",
        '[^[:alnum:]]+'
    )) WITH ORDINALITY AS s(w, n)
    WHERE w <> '' AND octet_length(w) < 2048
$$;

ALTER TABLE blocks DROP COLUMN search;  -- drops its index blocks_search too
ALTER TABLE blocks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    heaper_search_vector(title || ' ' || text)
) STORED;
CREATE INDEX blocks_search ON blocks USING GIN (search);
