# A flapping link: bob (r1) is cut off and reconnected every second. The others drop
# him once he has been silent for the failure timeout (1.5 s), and take him back only
# after he has answered every probe for a whole stability period (2.5 s). Meanwhile
# his data stays out of the others' way, and he catches up once he is back.

cluster 3
---
ok

run 3s
---
ok

isolate r1
---
ok

run 2s
---
ok

heal
---
ok

run 1s
---
ok

isolate r1
---
ok

run 1s
---
ok

heal
---
ok

run 1s
---
ok

views
---
r0: r0 r2
r1: r1
r2: r0 r2

put r0 k "v1" -> M0
---
201 created

get r1 k meta=M0
---
503 causal dependencies not satisfied

isolate r1
---
ok

run 1s
---
ok

heal
---
ok

run 2s
---
ok

views
---
r0: r0 r2
r1: r1
r2: r0 r2

run 1s
---
ok

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2

get r1 k meta=M0
---
200 "v1"
