/* The queue table: which event types each queue subscribes to, which function
 * drains it, and its ordering and retry rules. This is the whole topology of the
 * bus in one place. */
#include "bus/bus.h"
#include "functions/functions.h"

const bus_queue_t bus_queues[] = {
    {.name = "registration-kyc",
     .subscribes = "user.registration.requested",
     .handler = fn_registration_kyc},
    {.name = "registration-mail",
     .subscribes = "user.registration.approved|user.registration.rejected",
     .handler = fn_registration_mail},
    {.name = "partner-webhooks",
     .subscribes = "partner.webhook.received",
     .handler = fn_partner_webhooks},
    {.name = "device-provisioning",
     .subscribes = "device.claimed",
     .handler = fn_device_provisioning},
    {.name = "device-mail", .subscribes = "device.activated", .handler = fn_device_mail},
    {.name = "bank-forwarder",
     .subscribes = "device.event.received|device.command.completed",
     .handler = fn_bank_forwarder,
     .fifo = true,
     .retry_forever = true},
    {.name = "ops-alarm-mail", .subscribes = "alarm.raised", .handler = fn_ops_alarm_mail},
};

const int bus_queues_count = (int)(sizeof(bus_queues) / sizeof(bus_queues[0]));
