{#- All-time metrics per event type, rolled up from the daily mart (small: replicated to every node). -#}
{{ config(materialized='table') }}
{%- if target.type == 'redshift' %}{{ config(dist='all', sort=['event_type']) }}{% endif %}

select
    event_type,
    count(*) as active_days,
    min(event_date) as first_event_date,
    max(event_date) as last_event_date,
    sum(events) as events,
    sum(anomalies) as anomalies,
    cast(sum(anomalies) as {{ dbt.type_float() }}) / sum(events) as anomaly_rate,
    sum(total_value) as total_value,
    sum(total_value) / sum(events) as avg_value,
    min(min_value) as min_value,
    max(max_value) as max_value,
    max(users) as peak_daily_users
from {{ ref('mart_event_type_daily') }}
group by event_type
