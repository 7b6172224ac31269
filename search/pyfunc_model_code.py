"""The models-from-code file of every logged trial model (``search/pyfunc.py`` says what it is)."""

import mlflow.models

from mcel_search.search.pyfunc import McelLogitsModel

mlflow.models.set_model(McelLogitsModel())
