/* Conversions between the public mig_event and the wire Event, shared by the
 * engine's control channel (control.c) and the control client. */
#ifndef MIG_CONTROL_INT_H
#define MIG_CONTROL_INT_H

#include "common.h"
#include "wire.h"

/* The wire event borrows ev's strings. */
void mig__event_to_wire(const mig_event *ev, Migwire__Event *w);
/* The public event borrows w's strings. */
void mig__event_from_wire(const Migwire__Event *w, mig_event *ev);

#endif
