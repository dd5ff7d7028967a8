"""Flower's settings, read from the working directory by ``celery -A workers flower``.

Authentication is not set here: ``--basic-auth`` comes from FLOWER_BASIC_AUTH (Makefile,
compose.yaml), so Flower never starts open by accident.
"""

# The task list shows each run under its event (the task name, ``<product_tag>.<event>``) with
# its arguments: the message's argsrepr, where session-derived values are already ``***``.
tasks_columns = "name,uuid,state,args,result,received,started,runtime,worker"
