# Helpers shared by scripts/bench (sourced, not run).

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "error: $what did not come up within ${limit}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

stop_pid() { # stop_pid PID: TERM, wait up to 15 s, then KILL
  local pid="$1"
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}

redis_del_prefix() { # removes every key under PREFIX:
  port_open 6379 || return 0
  redis-cli -p 6379 --scan --pattern "$1:*" 2>/dev/null \
    | xargs -r -n 500 redis-cli -p 6379 del >/dev/null 2>&1 || true
}

rabbit_delete_queue() {
  command -v rabbitmqctl >/dev/null || return 0
  for q in "$1" "$1.dead" "$1.orders" "$1.orders.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}

pg_create() { psql "$PG_URL/postgres" -qAtc "CREATE DATABASE $1" >/dev/null; }
pg_drop() { psql "$PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true; }

round0() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# redis_bench_reserve PREFIX REQUESTS CLIENTS SECONDS CSV_OUT: runs the
# backend's reserve.lua with EVALSHA from redis-benchmark, distinct buyers
# (__rand_int__ in the user argument), a stock that outlasts the run; prints
# requests per second.
redis_bench_reserve() {
  local prefix="$1" n="$2" c="$3" secs="$4" csv="$5"
  local base="$prefix:{r1:i1}" sha run_id
  # The backend loads reserve.lua with guard.lua's and permits.lua's helpers
  # prepended.
  sha=$(cat "$ROOT/lua/redis/guard.lua" "$ROOT/lua/redis/permits.lua" "$ROOT/lua/redis/reserve.lua" |
    redis-cli -p 6379 -x script load)
  run_id=$(redis-cli -p 6379 info server | tr -d '\r' | awk -F: '$1 == "run_id" { print $2 }')
  redis-cli -p 6379 hset "$base:stock" total 10000000 available 10000000 reserved 0 sold 0 \
    starts_ms 0 ends_ms 99999999999999 per_user_limit 1 price_cents 100 verified "$run_id" >/dev/null
  timeout $((secs + 20)) redis-benchmark -p 6379 -n "$n" -c "$c" -r 1000000000 --csv \
    evalsha "$sha" 7 "$base:stock" "$base:buyers" "$base:attempt:bench" "$base:inflight" \
    "$base:leases" "$base:lease_exp" "$base:lease_gen" \
    "user:__rand_int__" 1 "$(date +%s%3N)" "1-1-bench" "bench" "$base:attempt:" "" 0 0 >"$csv"
  tail -1 "$csv" | awk -F'","' '{ gsub(/"/, "", $2); print $2 }'
}
