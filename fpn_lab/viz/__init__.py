"""Drawing: samples, batches, results and predictions with matplotlib."""
