//! mayfly's domain: identifiers, the job lifecycle and label matching. Pure: no I/O, no async,
//! time and randomness come in as parameters.
