# The contract's reconnect timeline (alice = r0, bob = r1, carol = r2).
# A reconnected replica is not healed within ~2 s of the network coming back: the
# others re-admit it only after the stability period (2.5 s), data flows only between
# replicas that have each other in view, and a request waits at most 0.5 s.

cluster 3
---
ok

run 3s
---
ok

put r0 matcha "ice-cream" -> M0
---
201 created

isolate r1
---
ok

run 1s
---
ok

put r0 matcha "tea" meta=M0 -> M1
---
200 replaced

heal
---
ok

run 1s
---
ok

get r0 matcha meta=M1 -> M2
---
200 "tea"

get r1 matcha meta=M2
---
503 causal dependencies not satisfied

put r1 matcha "coffee" meta=M2
---
503 causal dependencies not satisfied

get r1 matcha meta=M0
---
200 "ice-cream"

views
---
r0: r0 r2
r1: r1
r2: r0 r2

# After the stability period bob is back in every view and caught up.
run 4s
---
ok

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2

get r1 matcha meta=M2
---
200 "tea"
