{#- Typed, renamed events with the derived fields every mart uses (hour bucket, anomaly flag, lag). -#}
{{ config(materialized='view') }}
{%- if target.type == 'redshift' %}{{ config(bind=False) }}{% endif %}

select
    event_id,
    source,
    user_id,
    event_type,
    event_time,
    event_date,
    {{ dbt.date_trunc('hour', 'event_time') }} as event_hour,
    {{ dbt.safe_cast('value', dbt.type_float()) }} as value,
    {{ dbt.safe_cast('avg_value', dbt.type_float()) }} as avg_value,
    anomaly_status,
    case when anomaly_status = 'ANOMALY' then 1 else 0 end as is_anomaly,
    attributes,
    shard_id,
    sequence_number,
    sub_sequence,
    shard_depth,
    partition_key,
    arrival_time,
    {{ dbt.datediff('event_time', 'arrival_time', 'second') }} as arrival_delay_seconds
from {{ source('warehouse', 'events') }}
