-- The W3C traceparent of the request that accepted a reply, when traces are
-- exported (OTEL_EXPORTER_OTLP_ENDPOINT): every delivery attempt and the
-- webhook that confirms it join that trace, across processes and restarts.
ALTER TABLE gold_replies ADD COLUMN trace_context TEXT;
