module github.com/celery/celery-operator/policies/cpu-memory

go 1.24
