"""Safety training data: a taxonomy of harm categories with harmful requests and benign look-alikes,
unanswerable questions and behavioural policies (data/, written for this project), their fixed
train/test items (items.py), how answers are read (detect.py) and the data builder behind
`surgery safety-data` (build.py). The alignment suite asks the test items (evals/tasks/alignment)."""
