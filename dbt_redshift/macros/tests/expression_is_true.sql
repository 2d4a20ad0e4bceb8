{# Rows for which a boolean SQL expression is not true fail the test. #}
{% test expression_is_true(model, expression) %}
select *
from {{ model }}
where not ({{ expression }})
{% endtest %}
