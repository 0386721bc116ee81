"""`make bench-fleet`: a simulated fleet serving a day of personal-adapter requests,
driven by the real routing decision and the real residency managers.

  trace.py       the requests: Zipf popularity over a drifting permutation, retrains
  fleet.py       the workers: one `workers.engine.residency.ResidencyManager` each, the
                 rows routing reads, load counts, `adapters_app.lifecycle.routing.choose`
  cold_loads.py  what a load from each tier costs (bench-serving's figures, assumptions named)
  simulation.py  one day through one fleet under one policy, and its figures

Nothing here re-implements a policy: eviction, admission and demotion are the managers',
the choice of worker is routing.py's. `manage.py bench_fleet` prints the tables.
"""
