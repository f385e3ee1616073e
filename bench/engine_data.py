"""Rows for the engine benchmarks, made in PostgreSQL itself (generate_series), not one by one."""

from django.db import connection

# A canonical chat body of about 1 KB; %s numbers it.
BODY_SQL = (
    '\'{"max_tokens":300,"messages":[{"content":"\' || repeat(\'You answer questions about '
    'the catalogue. \', 22) || \'","role":"system"},{"content":"Question \' || i || '
    '\': which of the listed items fits a small kitchen?","role":"user"}],'
    '"model":"gpt-4o-mini","temperature":0.2}\''
)


def requests_fill(*, api_key_id: int, count: int, status: str, batch_id=None, attempts=0) -> None:
    """`count` chat requests of one key, all in `status` (and in `batch_id`, if given)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO requests_app_batchrequest
                (id, api_key_id, endpoint, model, body, body_bytes, embedding_inputs, fingerprint,
                 status, attempts, deferrals, batch_id, error_code, error_message, created_at,
                 updated_at)
            SELECT gen_random_uuid(), %s, '/v1/chat/completions', 'gpt-4o-mini', body,
                   octet_length(body), 0, md5(body) || md5(i::text), %s, %s, 0, %s, '', '',
                   now() - interval '1 hour' + i * interval '1 millisecond', now()
            FROM (SELECT i, {BODY_SQL} AS body FROM generate_series(1, %s) AS i) AS gen
            """,  # noqa: S608 (BODY_SQL is a constant)
            [api_key_id, status, attempts, batch_id, count],
        )
