{#- Anomalies per UTC hour, event type and source: counts, rate, users affected, worst deviation. -#}
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    pre_hook="{{ replace_partition() }}",
    on_schema_change='append_new_columns',
) }}
{%- if target.type == 'redshift' %}{{ config(dist='even', sort=['event_hour']) }}{% endif %}
{%- if target.type == 'postgres' %}{{ config(indexes=[{'columns': ['event_date']}]) }}{% endif %}

select
    event_date,
    event_hour,
    {{ dbt.dateadd('hour', 1, 'event_hour') }} as event_hour_end,
    event_type,
    source,
    count(*) as events,
    sum(is_anomaly) as anomalies,
    cast(sum(is_anomaly) as {{ dbt.type_float() }}) / count(*) as anomaly_rate,
    count(distinct user_id) as users,
    count(distinct case when is_anomaly = 1 then user_id end) as anomalous_users,
    avg(value) as avg_value,
    max(case when is_anomaly = 1 then abs(value - avg_value) end) as max_anomaly_deviation
from {{ ref('stg_events') }}
{{ partition_filter() }}
group by event_date, event_hour, event_type, source
