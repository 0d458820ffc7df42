"""Generate an orders table from the BG/NBD and Gamma-Gamma models.

Each customer makes a first purchase at a uniform time in the first
--first-purchase-weeks weeks, then buys as a Poisson process whose rate is
drawn from Gamma(shape r, rate alpha) per week. After each repeat purchase
the customer drops out for good with a probability drawn from Beta(a, b).
The simulation stops at the end of the calibration period,
--calibration-weeks after the start. Purchases of one customer on one UTC
day become one order. The value of each order is drawn from Gamma(shape p,
rate nu), where nu is drawn once per customer from Gamma(shape q, rate v).

The default parameters are the CDNOW estimates that README.md gives and
tests/clv.rs checks: r = 0.243, alpha = 4.414 weeks, a = 0.793, b = 2.426
for BG/NBD, and p = 6.25, q = 3.74, v = 15.44 for Gamma-Gamma.

The output is one Parquet file with the canonical orders columns:
order_id and contact_id (strings), ordered_at (timestamp, UTC), amount
(float64, rounded to cents, at least 0.01), currency ("USD") and status
("completed"). Rows are sorted by ordered_at, as an order export would be.
The same seed and arguments give the same file.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import polars as pl

MICROS_PER_WEEK = 7 * 86_400_000_000
MICROS_PER_DAY = 86_400_000_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Parquet file to write")
    parser.add_argument("--customers", type=int, required=True, help="number of customers")
    parser.add_argument("--seed", type=int, default=1, help="seed of numpy's default generator")
    parser.add_argument("--start", default="2024-01-01", help="first day of the simulation (UTC date)")
    parser.add_argument("--first-purchase-weeks", type=float, default=13.0,
                        help="first purchases are uniform over this many weeks after --start")
    parser.add_argument("--calibration-weeks", type=float, default=39.0,
                        help="length of the simulated period in weeks; it must be whole days")
    parser.add_argument("--r", type=float, default=0.243, help="BG/NBD r")
    parser.add_argument("--alpha", type=float, default=4.414, help="BG/NBD alpha, in weeks")
    parser.add_argument("--a", type=float, default=0.793, help="BG/NBD a")
    parser.add_argument("--b", type=float, default=2.426, help="BG/NBD b")
    parser.add_argument("--p", type=float, default=6.25, help="Gamma-Gamma p")
    parser.add_argument("--q", type=float, default=3.74, help="Gamma-Gamma q")
    parser.add_argument("--v", type=float, default=15.44, help="Gamma-Gamma v (gamma), in units of money")
    return parser.parse_args()


def simulate_purchases(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the customer index and the time in weeks of every purchase, first purchases included."""
    n = args.customers
    # A rate of exactly 0 (a Gamma draw can underflow) would make the waiting time infinite.
    rate = np.maximum(rng.gamma(args.r, 1.0 / args.alpha, n), 1e-300)
    dropout = rng.beta(args.a, args.b, n)
    first = rng.uniform(0.0, args.first_purchase_weeks, n)

    customers = [np.arange(n)]
    times = [first]
    active = np.arange(n)
    current = first
    while active.size:
        current = current + rng.exponential(1.0 / rate[active])
        inside = current < args.calibration_weeks
        active = active[inside]
        current = current[inside]
        customers.append(active)
        times.append(current)
        stays = rng.uniform(size=active.size) >= dropout[active]
        active = active[stays]
        current = current[stays]
    return np.concatenate(customers), np.concatenate(times)


def build_orders(args: argparse.Namespace) -> pl.DataFrame:
    """Simulate the customers and return one order per customer and purchase day."""
    rng = np.random.default_rng(args.seed)
    customer, weeks = simulate_purchases(args, rng)
    start = datetime.datetime.fromisoformat(args.start).replace(tzinfo=datetime.timezone.utc)
    start_micros = int(start.timestamp()) * 1_000_000
    micros = start_micros + np.floor(weeks * MICROS_PER_WEEK).astype(np.int64)

    purchases = pl.DataFrame({"customer": customer, "micros": micros})
    orders = (
        purchases.with_columns(day=pl.col("micros") // MICROS_PER_DAY)
        .group_by("customer", "day")
        .agg(pl.col("micros").min())
        .sort("micros", "customer")
    )
    order_customer = orders["customer"].to_numpy()
    spend_rate = rng.gamma(args.q, 1.0 / args.v, args.customers)
    amount = rng.gamma(args.p, 1.0 / spend_rate[order_customer])
    amount = np.maximum(np.round(amount, 2), 0.01)

    id_width = len(str(orders.height))
    contact_width = len(str(args.customers - 1))
    return orders.select(
        order_id=pl.lit("O") + pl.int_range(1, pl.len() + 1).cast(pl.String).str.zfill(id_width),
        contact_id=pl.lit("C") + pl.col("customer").cast(pl.String).str.zfill(contact_width),
        ordered_at=pl.col("micros").cast(pl.Datetime("us", "UTC")),
        amount=pl.Series(amount, dtype=pl.Float64),
        currency=pl.lit("USD"),
        status=pl.lit("completed"),
    )


def main() -> None:
    args = parse_args()
    if (args.calibration_weeks * 7) % 1:
        sys.exit(f"--calibration-weeks {args.calibration_weeks} is not a whole number of days")
    orders = build_orders(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    orders.write_parquet(args.out)
    start = datetime.date.fromisoformat(args.start)
    last_day = start + datetime.timedelta(days=args.calibration_weeks * 7 - 1)
    print(
        f"wrote {orders.height:,} orders of {orders['contact_id'].n_unique():,} customers to {args.out}; "
        f"the calibration period ends on {last_day.isoformat()}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
