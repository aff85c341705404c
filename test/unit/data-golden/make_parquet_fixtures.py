"""Writes the small parquet files test/unit/data-formats.test.ts reads with hyparquet.

Needs pyarrow (not in CI; the files are committed):
  pip install --target /tmp/pqlib pyarrow && PYTHONPATH=/tmp/pqlib /work/pyenv/bin/python test/unit/data-golden/make_parquet_fixtures.py
"""
import os
import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.dirname(os.path.abspath(__file__))

alpaca = pa.table({
    "instruction": ["Name a colour.", "Translate to French.", "Say hi."],
    "input": ["", "cat", None],
    "output": ["Blue.", "chat", "Hi!"],
    "id": pa.array([1, 2, 3], type=pa.int64()),
})
pq.write_table(alpaca, os.path.join(OUT, "alpaca.parquet"), compression="snappy")

conv_type = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
sharegpt = pa.table({
    "conversations": pa.array([
        [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
        [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of Peru?"}, {"from": "gpt", "value": "Lima"}],
        [{"from": "human", "value": "no answer"}],
    ], type=conv_type),
})
pq.write_table(sharegpt, os.path.join(OUT, "sharegpt.parquet"), compression="snappy")
print("wrote alpaca.parquet, sharegpt.parquet")
