{#- One row per user per event day: volume, anomalies, variety and value. Rebuilt a day at a time. -#}
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    pre_hook="{{ replace_partition() }}",
    on_schema_change='append_new_columns',
) }}
{%- if target.type == 'redshift' %}{{ config(dist='user_id', sort=['event_date', 'user_id']) }}{% endif %}
{%- if target.type == 'postgres' %}{{ config(indexes=[{'columns': ['event_date']}]) }}{% endif %}

select
    event_date,
    user_id,
    count(*) as events,
    sum(is_anomaly) as anomalies,
    count(distinct event_type) as event_types,
    count(distinct source) as sources,
    sum(value) as total_value,
    avg(value) as avg_value,
    min(value) as min_value,
    max(value) as max_value,
    min(event_time) as first_event_at,
    max(event_time) as last_event_at
from {{ ref('stg_events') }}
{{ partition_filter() }}
group by event_date, user_id
