# Durable replicas: every replica loses power at once, and comes back with every write it
# acknowledged (each answer waited for the write's journal record to be synced). A
# replica that loses power alone comes back, recovers its journal, and fetches from its
# peers only what it missed; a deleted key stays deleted.

cluster 3 durable
---
ok

run 3s
---
ok

put r0 tea "green" -> M0
---
201 created

put r1 coffee "black" meta=M0 -> M1
---
201 created

delete r2 tea meta=M1 -> M2
---
200 deleted

power-loss all
---
ok

run 2s
---
ok

status
---
r0: down
r1: down
r2: down

restart all
---
ok

run 1s
---
ok

status
---
r0: ready keys=1
r1: ready keys=1
r2: ready keys=1

get r0 coffee meta=M2
---
200 "black"

get r1 tea meta=M2
---
404 key does not exist

power-loss r2
---
ok

put r0 cocoa "hot" meta=M2 -> M3
---
201 created

restart r2
---
ok

status
---
r0: ready keys=2
r1: ready keys=2
r2: bootstrapping keys=1

run 100ms
---
ok

status
---
r0: ready keys=2
r1: ready keys=2
r2: ready keys=2

get r2 cocoa meta=M3
---
200 "hot"

views
---
r0: r0 r1 r2
r1: r0 r1 r2
r2: r0 r1 r2
