# The contract's crash timeline: a replica killed is gone from every live view within
# 5 s; restarted with its old address, it is in every view and holds every key within
# 5 s, and it never names a write of its earlier life again.

cluster 3
---
ok

run 3s
---
ok

put r0 tea "green" -> M0
---
201 created

crash r2
---
ok

run 2s
---
ok

views
---
r0: r0 r1
r1: r0 r1
r2: down

put r1 coffee "black" meta=M0 -> M1
---
201 created

restart r2
---
ok

status
---
r0: ready keys=2
r1: ready keys=2
r2: bootstrapping keys=0

run 1s
---
ok

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2

status
---
r0: ready keys=2
r1: ready keys=2
r2: ready keys=2

get r2 coffee meta=M1
---
200 "black"

put r2 cocoa "hot" meta=M1 -> M2
---
201 created

get r0 cocoa meta=M2
---
200 "hot"
