//! Writing ONNX models from Rust: the official `onnx.proto` (ONNX IR, Apache
//! 2.0), vendored and compiled to prost messages by `build.rs`, and a small
//! graph builder over it.
//!
//! The builder writes what vecrec's exported models use: graphs of nodes
//! with attributes, float / int64 initialisers stored as `raw_data`, and
//! typed inputs and outputs with symbolic dimensions. Models are written with IR
//! version 8 and the default-domain opset 17, which every ONNX Runtime since
//! 1.13 reads.

use prost::Message;

/// The messages of the official `onnx.proto` (ONNX 1.17.0, vendored under
/// `proto/onnx/` and compiled by `build.rs`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = DataType::Float as i32;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = DataType::Int64 as i32;
/// IR version written.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written.
pub const OPSET: i64 = 17;

/// A dimension of a graph input or output.
#[derive(Clone, Debug)]
pub enum Dim {
    /// Fixed size.
    Fixed(usize),
    /// Symbolic (batch, sequence length).
    Named(&'static str),
}

/// A node attribute.
#[derive(Clone, Debug)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// Builds one graph.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => dimension::Value::DimParam((*s).to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float or int64 initialiser stored as little-endian `raw_data`.
fn initializer(name: String, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims,
        data_type: Some(data_type),
        name: Some(name),
        raw_data: Some(raw),
        ..Default::default()
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_owned()
    }

    /// Declares a graph output (an existing value, renamed through `Identity`).
    pub fn output(&mut self, value: &str, name: &str, elem: i32, dims: &[Dim]) {
        self.node("Identity", &[value], name, &[]);
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// A float initialiser of shape `dims`.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        self.graph.initializer.push(initializer(
            name.to_owned(),
            dims.iter().map(|d| *d as i64).collect(),
            FLOAT,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        name.to_owned()
    }

    /// An int64 initialiser (axes, shapes).
    pub fn ints(&mut self, data: &[i64]) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.graph.initializer.push(initializer(
            name.clone(),
            vec![data.len() as i64],
            INT64,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        name
    }

    /// A scalar float initialiser.
    pub fn scalar(&mut self, v: f32) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.graph.initializer.push(initializer(
            name.clone(),
            vec![],
            FLOAT,
            v.to_le_bytes().to_vec(),
        ));
        name
    }

    /// Adds a node with one output; `out` empty makes a fresh name.
    pub fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[(&str, Attr)]) -> String {
        self.counter += 1;
        let out = if out.is_empty() {
            format!("{}_{}", op.to_lowercase(), self.counter)
        } else {
            out.to_owned()
        };
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.clone()],
            name: Some(format!("n{}_{op}", self.counter)),
            op_type: Some(op.to_owned()),
            attribute: attrs
                .iter()
                .map(|(name, a)| {
                    let name = Some((*name).to_owned());
                    match a {
                        Attr::Int(i) => AttributeProto {
                            name,
                            i: Some(*i),
                            r#type: Some(AttributeType::Int as i32),
                            ..Default::default()
                        },
                        Attr::Float(f) => AttributeProto {
                            name,
                            f: Some(*f),
                            r#type: Some(AttributeType::Float as i32),
                            ..Default::default()
                        },
                        Attr::Ints(v) => AttributeProto {
                            name,
                            ints: v.clone(),
                            r#type: Some(AttributeType::Ints as i32),
                            ..Default::default()
                        },
                    }
                })
                .collect(),
            ..Default::default()
        });
        out
    }

    /// Shorthand for a node with a fresh output name and no attributes.
    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.node(op, inputs, "", &[])
    }

    /// The serialised model.
    pub fn finish(self, doc: &str) -> Vec<u8> {
        ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some("vecrec".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(doc.to_owned()),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_round_trips_through_prost() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", FLOAT, &[Dim::Named("batch"), Dim::Fixed(2)]);
        let w = g.weight("w", &[2, 1], &[1.0, 2.0]);
        let y = g.op("MatMul", &[&x, &w]);
        g.output(&y, "y", FLOAT, &[Dim::Named("batch"), Dim::Fixed(1)]);
        let bytes = g.finish("doc");
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.node[0].op_type(), "MatMul");
        assert_eq!(graph.initializer[0].raw_data().len(), 8);
        assert_eq!(graph.initializer[0].data_type, Some(FLOAT));
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        assert_eq!(m.ir_version, Some(IR_VERSION));
        assert_eq!(graph.output[0].name(), "y");
        let Some(type_proto::Value::TensorType(t)) = &graph.input[0].r#type.as_ref().unwrap().value
        else {
            panic!("the input is not a tensor");
        };
        let dims = &t.shape.as_ref().unwrap().dim;
        assert_eq!(
            dims[0].value,
            Some(dimension::Value::DimParam("batch".into()))
        );
        assert_eq!(dims[1].value, Some(dimension::Value::DimValue(2)));
    }
}
