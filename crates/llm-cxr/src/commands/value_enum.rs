//! Serde serializers for clap value enums, by their command-line names: the argument structs
//! the main job runs as stages (`demo::stages`) serialize their enum fields with them, so that a
//! stage's command line is written from the struct.

/// Serializes a clap value enum by its command-line name (`#[serde(serialize_with = ...)]` on
/// the argument structs' enum fields), so that a stage's command line is written from it.
pub fn name<E: clap::ValueEnum, S: serde::Serializer>(
    value: &E,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let possible = value
        .to_possible_value()
        .ok_or_else(|| serde::ser::Error::custom("a skipped value enum variant"))?;
    serializer.serialize_str(possible.get_name())
}

/// [`name`] for an optional value.
pub fn name_opt<E: clap::ValueEnum, S: serde::Serializer>(
    value: &Option<E>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => name(v, serializer),
        None => serializer.serialize_none(),
    }
}

/// [`name`] for a list of values.
pub fn names<E: clap::ValueEnum, S: serde::Serializer>(
    values: &[E],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    /// One value, by name.
    struct Named<'a, E>(&'a E);
    impl<E: clap::ValueEnum> serde::Serialize for Named<'_, E> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            name(self.0, serializer)
        }
    }
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for v in values {
        seq.serialize_element(&Named(v))?;
    }
    seq.end()
}
