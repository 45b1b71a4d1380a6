"""The process-wide service container: every client is made once, on first use.

Lambda keeps one ``Services`` at module scope across warm invocations; the worker makes one in
its startup hook. Construction is cheap (no network) so cold starts only pay for what a request
actually touches.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from jetmail.apikeys import ApiKeys
from jetmail.campaigns.service import CampaignService
from jetmail.campaigns.store import CampaignStore
from jetmail.compose import Composer
from jetmail.config import Settings
from jetmail.messages import MessageRepository, MessageService
from jetmail.sequences import SequenceService
from jetmail.storage.table import Table
from jetmail.suppressions import SuppressionStore
from jetmail.template_store import TemplateStore
from jetmail.tokens import Signer

if TYPE_CHECKING:
    from jetmail.queue import QueueConfig, SyncClient


def queue_config(settings: Settings) -> QueueConfig:
    from jetmail.queue import QueueConfig

    return QueueConfig(
        nats_url=settings.nats_url,
        creds_file=settings.nats_creds_file,
        stream=settings.jobs_stream,
        dlq_stream=settings.dlq_stream,
        replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
    )


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def table(self) -> Table:
        return Table(self.settings)

    @cached_property
    def api_keys(self) -> ApiKeys:
        return ApiKeys(self.table)

    @cached_property
    def templates(self) -> TemplateStore:
        return TemplateStore(self.table, default_locale=self.settings.default_locale)

    @cached_property
    def queue(self) -> SyncClient:
        from jetmail.queue import SyncClient

        return SyncClient.shared(queue_config(self.settings))

    @cached_property
    def messages(self) -> MessageService:
        return MessageService(table=self.table, templates=self.templates, queue=self.queue,
                              repository=MessageRepository(self.table))

    @cached_property
    def sequences(self) -> SequenceService:
        return SequenceService(table=self.table, messages=self.messages)

    @cached_property
    def composer(self) -> Composer:
        return Composer(self.settings, signer=self.signer)

    @cached_property
    def suppressions(self) -> SuppressionStore:
        return SuppressionStore(self.table)

    @cached_property
    def campaign_store(self) -> CampaignStore:
        return CampaignStore(self.table)

    @cached_property
    def campaigns(self) -> CampaignService:
        return CampaignService(store=self.campaign_store, templates=self.templates, queue=self.queue,
                               contacts=self.contacts, segments=self.segments)

    @cached_property
    def signer(self) -> Signer:
        return Signer(self.settings.signing_secret)
