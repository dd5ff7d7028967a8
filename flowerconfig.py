"""Flower's settings, read from the working directory by ``celery -A workers flower``.

Authentication is not set here: ``--basic-auth`` comes from FLOWER_BASIC_AUTH, and the workers
app itself (``ductape_jobs/flower_guard.py``) refuses to start Flower without it and binds it
to 127.0.0.1 unless told otherwise, with or without this file.
"""

# The task list shows each run under its event (the task name, ``<product_tag>.<event>``) with
# its arguments: the message's argsrepr, where session-derived values are already ``***``; its
# keyword arguments name its job (``{'job_id': ...}``, the kwargsrepr), and a run sent ahead of
# its time (task-sent, before a worker has it) shows its ETA.
tasks_columns = "name,uuid,state,args,kwargs,result,eta,received,started,runtime,worker"
