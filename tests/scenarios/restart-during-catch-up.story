# A replica restarted while it catches up, then restarted again: every life copies the
# store from a live peer before serving, picks a fresh incarnation, and ends up with
# every key. Its clients' metadata from before the crashes stays valid.

cluster 3
---
ok

run 3s
---
ok

put r0 a "1" -> M0
---
201 created

put r1 b "2" meta=M0 -> M1
---
201 created

crash r2
---
ok

run 1s
---
ok

put r0 c "3" meta=M1 -> M2
---
201 created

restart r2
---
ok

run 1ms
---
ok

crash r2
---
ok

restart r2
---
ok

status
---
r0: ready keys=3
r1: ready keys=3
r2: bootstrapping keys=0

run 50ms
---
ok

status
---
r0: ready keys=3
r1: ready keys=3
r2: ready keys=3

get r2 c meta=M2
---
200 "3"

get r2 a meta=M0
---
200 "1"

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2
