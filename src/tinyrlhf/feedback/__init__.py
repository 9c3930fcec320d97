"""Human feedback: the SQLite label store (store.py), the labelling and arena web app (app.py, static/,
`tinyrlhf label`), where items come from (sources.py) and the export to the trainers' formats (export.py,
`tinyrlhf feedback export`)."""
