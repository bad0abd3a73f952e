# Causal delivery: alice (r0) and carol (r2) are cut off from each other, so carol
# learns of alice's writes only through bob (r1). Bob's write y depends on alice's x:
# it reaches carol first and waits in her delivery buffer, invisible, until x is
# applied; a read carrying y's metadata waits (pulling from bob) until both are.

cluster 3
---
ok

run 3s
---
ok

cut r0 r2
---
ok

cut r2 r0
---
ok

run 2s
---
ok

views
---
r0: r0 r1
r1: r0 r1 r2
r2: r1 r2

put r0 x "first" -> Mx
---
201 created

get r1 x meta=Mx -> My0
---
200 "first"

put r1 y "second" meta=My0 -> My
---
201 created

get r2 y
---
404 key does not exist

get r2 y meta=My
---
200 "second"

get r2 x
---
200 "first"

heal
---
ok

run 4s
---
ok

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2
