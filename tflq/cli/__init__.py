"""The ``tflq`` command line: ``tflq <verb> --flags``; ``tflq --helpfull`` lists every flag."""
