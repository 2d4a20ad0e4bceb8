{#- Per event type and day; additive, so all-time metrics roll up from it without rescanning events. -#}
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    pre_hook="{{ replace_partition() }}",
    on_schema_change='append_new_columns',
) }}
{%- if target.type == 'redshift' %}{{ config(dist='even', sort=['event_date', 'event_type']) }}{% endif %}
{%- if target.type == 'postgres' %}{{ config(indexes=[{'columns': ['event_date']}]) }}{% endif %}

select
    event_date,
    event_type,
    count(*) as events,
    sum(is_anomaly) as anomalies,
    count(distinct user_id) as users,
    sum(value) as total_value,
    min(value) as min_value,
    max(value) as max_value
from {{ ref('stg_events') }}
{{ partition_filter() }}
group by event_date, event_type
