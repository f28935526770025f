using IlgpuMedusa.Hosting;
using IlgpuMedusa.Models;
using Microsoft.Extensions.AI;

namespace IlgpuMedusa.Tests.Hosting;

/// <summary>
/// The templates against their published layouts: Meta's llama chat_completion (per turn "[INST] {user} [/INST] {answer} "
/// between BOS and EOS, the system prompt as "&lt;&lt;SYS&gt;&gt;\n{system}\n&lt;&lt;/SYS&gt;&gt;\n\n" before the first user
/// text) and FastChat's vicuna_v1.1 ("{system} USER: {user} ASSISTANT: {answer}&lt;/s&gt;USER: ...").
/// </summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage System = new(ChatRole.System, "You are a kind storyteller.");
    private static readonly ChatMessage Hi = new(ChatRole.User, "Tell me a story.");
    private static readonly ChatMessage Answer = new(ChatRole.Assistant, "Once upon a time there was a cat.");
    private static readonly int[] OnceUponATimeIds = [1, 9038, 2501, 263, 931];
    private static readonly ChatMessage More = new(ChatRole.User, "  And then?  ");

    private static string Render(ChatTemplateKind kind, params ChatMessage[] messages) => ChatTemplate.Render(ChatTemplate.Apply(kind, messages));

    [Fact]
    public void Llama2Chat_OneTurnWithASystemPrompt()
    {
        Assert.Equal("<s>[INST] <<SYS>>\nYou are a kind storyteller.\n<</SYS>>\n\nTell me a story. [/INST]", Render(ChatTemplateKind.Llama2Chat, System, Hi));
    }

    [Fact]
    public void Llama2Chat_TwoTurns_EachAnsweredTurnBetweenBosAndEos()
    {
        Assert.Equal(
            "<s>[INST] <<SYS>>\nYou are a kind storyteller.\n<</SYS>>\n\nTell me a story. [/INST] Once upon a time there was a cat. </s><s>[INST] And then? [/INST]",
            Render(ChatTemplateKind.Llama2Chat, System, Hi, Answer, More));
        Assert.Equal("<s>[INST] Tell me a story. [/INST]", Render(ChatTemplateKind.Llama2Chat, Hi));
    }

    [Fact]
    public void Llama2Chat_InstructionsComeBeforeSystemMessages()
    {
        var segments = ChatTemplate.Apply(ChatTemplateKind.Llama2Chat, [System, Hi], instructions: "Be brief.");
        Assert.Equal("<s>[INST] <<SYS>>\nBe brief.\nYou are a kind storyteller.\n<</SYS>>\n\nTell me a story. [/INST]", ChatTemplate.Render(segments));
    }

    [Fact]
    public void Vicuna_DefaultSystemPrompt_AndTwoTurns()
    {
        Assert.Equal(
            "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Tell me a story. ASSISTANT:",
            Render(ChatTemplateKind.Vicuna, Hi));
        Assert.Equal(
            "<s>You are a kind storyteller. USER: Tell me a story. ASSISTANT: Once upon a time there was a cat.</s>USER: And then? ASSISTANT:",
            Render(ChatTemplateKind.Vicuna, System, Hi, Answer, More));
    }

    [Fact]
    public void Plain_ConcatenatesTheTexts()
    {
        Assert.Equal("<s>Once upon a time", Render(ChatTemplateKind.Plain, new ChatMessage(ChatRole.User, "Once upon a time")));
        Assert.Equal("<s>Once upon a time, there was", Render(ChatTemplateKind.Plain, new ChatMessage(ChatRole.User, "Once upon a time"), new ChatMessage(ChatRole.Assistant, ", there was")));
        // System text goes first, on its own line (it was glued to the story: "Be nice.Once upon a time").
        Assert.Equal("<s>Be nice.\nOnce upon a time, there was", Render(ChatTemplateKind.Plain, new ChatMessage(ChatRole.User, "Once upon a time"),
            new ChatMessage(ChatRole.System, "Be nice."), new ChatMessage(ChatRole.Assistant, ", there was")));
    }

    [Fact]
    public void Auto_MustBeResolvedFirst() =>
        Assert.Throws<ArgumentException>(() => ChatTemplate.Apply(ChatTemplateKind.Auto, [Hi]));

    [Fact]
    public void Encode_PutsBosAndEosAsIds_AndEncodesEachSegmentOnItsOwn()
    {
        var tokenizer = ModelDirectory.OpenTokenizer(TestModels.Stories15MDirectory);
        var segments = ChatTemplate.Apply(ChatTemplateKind.Llama2Chat, [Hi, Answer, More]);
        var expected = new List<int>();
        expected.AddRange(tokenizer.Encode("[INST] Tell me a story. [/INST] Once upon a time there was a cat. ", addBos: true));
        expected.Add(tokenizer.EosId);
        expected.AddRange(tokenizer.Encode("[INST] And then? [/INST]", addBos: true));
        var ids = ChatTemplate.Encode(segments, tokenizer);
        Assert.Equal(expected, ids);
        Assert.Equal(2, ids.Count(id => id == tokenizer.BosId));
        Assert.Equal(1, ids.Count(id => id == tokenizer.EosId));

        // Plain: exactly the tokenizer's encoding of the prompt with BOS (llama2.c's ids for the demo prompt).
        Assert.Equal(OnceUponATimeIds,
            ChatTemplate.Encode(ChatTemplate.Apply(ChatTemplateKind.Plain, [new ChatMessage(ChatRole.User, "Once upon a time")]), tokenizer));
    }

    [Fact]
    public void Detect_ReadsTheModelDirectory()
    {
        Assert.Equal(ChatTemplateKind.Plain, ChatTemplate.Detect(TestModels.Stories15MDirectory));
        var root = TestModels.TempDirectory("templates");
        try
        {
            string Dir(string name)
            {
                var d = Path.Combine(root, name);
                Directory.CreateDirectory(d);
                return d;
            }
            Assert.Equal(ChatTemplateKind.Vicuna, ChatTemplate.Detect(Dir("vicuna-7b-v1.3")));
            Assert.Equal(ChatTemplateKind.Llama2Chat, ChatTemplate.Detect(Dir("Llama-2-7b-chat-hf")));
            Assert.Equal(ChatTemplateKind.Plain, ChatTemplate.Detect(Dir("Llama-2-7b-hf")));

            var withTemplate = Dir("model-a");
            File.WriteAllText(Path.Combine(withTemplate, "tokenizer_config.json"), """{"chat_template": "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"}""");
            Assert.Equal(ChatTemplateKind.Llama2Chat, ChatTemplate.Detect(withTemplate));

            var named = Dir("model-b");
            File.WriteAllText(Path.Combine(named, "config.json"), """{"_name_or_path": "lmsys/vicuna-13b-v1.5", "architectures": ["LlamaForCausalLM"]}""");
            Assert.Equal(ChatTemplateKind.Vicuna, ChatTemplate.Detect(named));

            var broken = Dir("model-c");
            File.WriteAllText(Path.Combine(broken, "tokenizer_config.json"), "{ not json");
            Assert.Equal(ChatTemplateKind.Plain, ChatTemplate.Detect(broken));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
