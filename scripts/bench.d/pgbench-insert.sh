#!/usr/bin/env bash
# Prints a pgbench script that inserts ROWS orders in one statement, the
# shape of the order writer's batch: INSERT … VALUES (…), (…) … ON CONFLICT
# DO NOTHING, every row unique (the transaction id and the row number).
#
#   scripts/bench.d/pgbench-insert.sh ROWS > insert.sql
set -euo pipefail
rows="${1:?rows per statement}"
echo "INSERT INTO orders (id, attempt_id, round_id, item_id, user_id, qty, unit_price_cents, status, reserved_at_ms, created_at_ms, pay_by_ms, paid_at_ms, cancelled_at_ms, cancel_reason) VALUES"
for ((i = 1; i <= rows; i++)); do
  sep=","
  ((i == rows)) && sep=""
  echo "('pgb-' || txid_current() || '-$i', 'pgb-' || txid_current() || '-$i', 800000000000, 1, 'pgb-user-' || txid_current() || '-$i', 1, 100, 'pending_payment', 0, 0, 600000, NULL, NULL, NULL)$sep"
done
echo "ON CONFLICT DO NOTHING;"
