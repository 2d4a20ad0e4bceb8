{#
  Partition plumbing. Dagster passes the partition as --vars '{"event_date": "YYYY-MM-DD"}'; each
  incremental mart then rebuilds exactly that event_date: the pre-hook deletes it (inside the
  model's transaction) and the model's SELECT, filtered to it, appends it again. Without the var a
  run rebuilds every day the same way, so a plain `dbt build` is never a double append.
#}

{% macro partition_date() -%}
    {%- set day = var('event_date', none) -%}
    {%- if day is not none and day != '' -%}
        {%- if modules.re.match('^\d{4}-\d{2}-\d{2}$', day | string) is none -%}
            {{ exceptions.raise_compiler_error("var event_date must be YYYY-MM-DD, got " ~ day) }}
        {%- endif -%}
        {{ return(day | string) }}
    {%- endif -%}
    {{ return(none) }}
{%- endmacro %}

{% macro partition_predicate(column='event_date') -%}
    {%- set day = partition_date() -%}
    {%- if day is none -%}1 = 1{%- else -%}{{ column }} = cast('{{ day }}' as date){%- endif -%}
{%- endmacro %}

{% macro partition_filter(column='event_date') -%}
    where {{ partition_predicate(column) }}
{%- endmacro %}

{% macro replace_partition(column='event_date') -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ partition_predicate(column) }}
    {%- endif -%}
{%- endmacro %}

{#
  Tests on partitioned relations say `where: "__in_partition__"`: while a partition is being
  built they check that day only (a unique test over years of events per run would not scale);
  without the var they check everything. dbt renders test `where` configs without project macros,
  so the placeholder is resolved here, in dbt's own hook for it.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- set where = where | replace('__in_partition__', partition_predicate()) -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
