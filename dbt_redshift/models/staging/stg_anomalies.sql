{#- Anomalous events with how far each value sat from its rolling average. -#}
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
    {{ dbt.safe_cast('value', dbt.type_float()) }} - {{ dbt.safe_cast('avg_value', dbt.type_float()) }}
        as deviation_from_avg
from {{ source('warehouse', 'anomalies') }}
