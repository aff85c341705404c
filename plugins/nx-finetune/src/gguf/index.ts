// src/gguf — the GGUF helper's TypeScript side: the export-gguf job's tokenizer metadata and the Ollama Modelfile.
// (The GGUF file itself is written by the engine: finetune-engine export-gguf.)
export {
  ggufTokenizerMetadata,
  tokenizerMetadataFrom,
  trainingChatTemplate,
  type GgufTokenizer,
  type TokenizerMetadataOptions,
  type TrainingTemplate,
} from "./tokenizer-metadata";
export { ollamaModelfile, goTemplateForJinja, type ModelfileOptions } from "./modelfile";
