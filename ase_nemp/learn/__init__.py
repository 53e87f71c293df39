"""Active learning (``nemp learn``): explore with a committee, label what it is unsure of
with any ASE calculator as teacher, fine-tune, repeat.

>>> from ase_nemp.learn import learn
>>> log = learn("learn.yaml")                 # or LearnConfig.from_yaml(...), resume=True

See :mod:`ase_nemp.learn.config` for the YAML file and :mod:`ase_nemp.learn.loop` for the
files a run writes.
"""

from .config import LearnConfig, SelectConfig, TeacherConfig
from .loop import ActiveLearning, LearningInterrupted, learn
from .select import select
from .teacher import label, load_teacher

__all__ = ["LearnConfig", "SelectConfig", "TeacherConfig", "ActiveLearning", "LearningInterrupted", "learn",
           "select", "label", "load_teacher"]
