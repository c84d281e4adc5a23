"""`precopy validate`: precopy's predictions against recorded real QEMU migrations.

- `records`: a recorded run (the reference harness's JSON lines), as typed views;
- `measure`: the reference host's QEMU costs, measured from the records;
- `scenario`: a record -> the precopy scenario configured like it;
- `compare`: run each scenario against a real destination, measured vs predicted;
- `plot`: predicted against measured `remaining` over time (matplotlib, optional).
"""
