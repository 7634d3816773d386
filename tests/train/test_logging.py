import math

from astra.train.logging import TrainLogger, VALIDATION_CSV_NAME, read_metrics


def test_a_resume_that_logs_a_new_column_widens_the_csv(tmp_path):
    """A run resumed by code that logs more (session 43's one-shot columns) keeps every new column in the CSV; the
    rows logged before it leave the column empty, and rows after the resume step are still dropped."""
    first = TrainLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        first.log(step, {"val_loss": 0.1 * step}, kind="val")
    first.close()

    resumed = TrainLogger(tmp_path, resume_step=2, tensorboard=False)
    resumed.log(3, {"val_loss": 0.25, "val_one_shot_loss": 0.5}, kind="val")
    resumed.log(4, {"val_loss": 0.2, "val_one_shot_loss": 0.4}, kind="val")
    resumed.close()

    rows = read_metrics(tmp_path, VALIDATION_CSV_NAME)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert [row["val_loss"] for row in rows] == [0.1, 0.2, 0.25, 0.2]
    assert math.isnan(rows[0]["val_one_shot_loss"]) and math.isnan(rows[1]["val_one_shot_loss"])
    assert [row["val_one_shot_loss"] for row in rows[2:]] == [0.5, 0.4]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_row_without_a_logged_column_leaves_it_empty(tmp_path):
    logger = TrainLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 1.0, "grad_norm": 2.0})
    logger.log(2, {"loss": 0.5})
    rows = read_metrics(tmp_path)
    assert rows[1]["loss"] == 0.5 and math.isnan(rows[1]["grad_norm"])
