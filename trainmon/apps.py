from django.contrib.admin.apps import AdminConfig


class TrainmonAdminConfig(AdminConfig):
    default_site = "trainmon.admin.TrainmonAdminSite"
