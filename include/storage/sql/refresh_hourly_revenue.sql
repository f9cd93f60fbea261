-- The rollup of `ecommerce_hourly_revenue` (one transaction): recompute every UTC hour in
-- [from_hour, to_hour) from ecommerce_events; NULL bounds mean every hour (a full rebuild).
DELETE FROM hourly_revenue
 WHERE hour >= coalesce(%(from_hour)s::timestamptz, '-infinity')
   AND hour < coalesce(%(to_hour)s::timestamptz, 'infinity');
INSERT INTO hourly_revenue (hour, purchases, units, revenue, buyers, refreshed_at, airflow_run_id)
SELECT date_trunc('hour', event_time, 'UTC'), count(*), coalesce(sum(quantity), 0), coalesce(sum(total_amount), 0),
       count(DISTINCT user_id), now(), %(run_id)s
  FROM ecommerce_events
 WHERE event_type = 'purchase'
   AND event_time >= coalesce(%(from_hour)s::timestamptz, '-infinity')
   AND event_time < coalesce(%(to_hour)s::timestamptz, 'infinity')
 GROUP BY 1;
